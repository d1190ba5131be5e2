"""Multiple FPGAs with input batching: two cards, one image each (the tutorial's first block)."""
import sys; sys.path.insert(0, __import__("os").path.dirname(__file__) + "/..")  # noqa: E702
from _models import ensure_models, report  # noqa: E402
ensure_models("resnet18.onnx")

import microndla
import numpy as np
numfpga = 2
numclus = 1
# Create Micron DLA API
sf = microndla.MDLA()
# Generate instructions
sf.SetFlag({'nfpgas': str(numfpga), 'nclusters': str(numclus)})
sf.Compile('resnet18.onnx')
in1 = np.random.rand(2, 3, 224, 224).astype(np.float32)
input_img = np.ascontiguousarray(in1)
# Create a location for the output
output = sf.Run(input_img)

report("2 FPGAs, 2 images", sf, output)

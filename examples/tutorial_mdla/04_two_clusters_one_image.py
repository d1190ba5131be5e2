"""Multiple clusters without input batching: two clusters split the work of one image."""
import sys; sys.path.insert(0, __import__("os").path.dirname(__file__) + "/..")  # noqa: E702
from _models import ensure_models, report  # noqa: E402
ensure_models("resnet18.onnx")

import microndla
import numpy as np
numfpga = 1
numclus = 2
# Create Micron DLA API
sf = microndla.MDLA()
sf.SetFlag({'nclusters': str(numclus), 'clustersbatchmode': '1'})
# Generate instructions
sf.Compile('resnet18.onnx')
in1 = np.random.rand(3, 224, 224).astype(np.float32)
input_img = np.ascontiguousarray(in1)
output = sf.Run(input_img)

report("2 clusters, 1 image", sf, output)

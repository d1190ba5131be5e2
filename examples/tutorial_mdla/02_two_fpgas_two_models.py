"""Multiple FPGAs with different models: each MDLA object gets a card of its own."""
import sys; sys.path.insert(0, __import__("os").path.dirname(__file__) + "/..")  # noqa: E702
from _models import ensure_models, report  # noqa: E402
ensure_models("resnet50.onnx", "resnet18.onnx")

import microndla
import numpy as np
# Create Micron DLA API
sf1 = microndla.MDLA()
# Create second Micron DLA API
sf2 = microndla.MDLA()
# Generate instructions for model1
sf1.Compile('resnet50.onnx')
# Generate instructions for model2
sf2.Compile('resnet18.onnx')
in1 = np.random.rand(3, 224, 224).astype(np.float32)
in2 = np.random.rand(3, 224, 224).astype(np.float32)
input_img1 = np.ascontiguousarray(in1)
input_img2 = np.ascontiguousarray(in2)
output1 = sf1.Run(input_img1)
output2 = sf2.Run(input_img2)

report("ResNet-50 on card %d" % sf1._cards[0].index, sf1, output1)
report("ResNet-18 on card %d" % sf2._cards[0].index, sf2, output2)

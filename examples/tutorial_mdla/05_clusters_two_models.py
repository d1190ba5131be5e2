"""Multiple clusters with different models: ResNet-18 on clusters 0-1 and AlexNet on clusters 2-3
of the same card, running at the same time through PutInput/GetResult."""
import sys; sys.path.insert(0, __import__("os").path.dirname(__file__) + "/..")  # noqa: E702
from _models import ensure_models, report  # noqa: E402
ensure_models("resnet18.onnx", "alexnet.onnx")

import microndla
import numpy as np
nclus = 2
img0 = np.random.rand(3, 224, 224).astype(np.float32)
img1 = np.random.rand(3, 224, 224).astype(np.float32)
ie = microndla.MDLA()
ie2 = microndla.MDLA()
ie.SetFlag({'nclusters': nclus, 'clustersbatchmode': 1})
ie2.SetFlag({'nclusters': nclus, 'firstcluster': nclus, 'clustersbatchmode': 1})
ie.Compile('resnet18.onnx')
ie2.Compile('alexnet.onnx', MDLA=ie)
ie.PutInput(img0, None)
ie2.PutInput(img1, None)
result0, _ = ie.GetResult()
result1, _ = ie2.GetResult()

report("ResNet-18 on clusters 0-1", ie, result0)
report("AlexNet on clusters 2-3", ie2, result1)

"""FWDNXT API: multiple clusters with input batching (1 card, 2 clusters, 2 images)."""
import sys; sys.path.insert(0, __import__("os").path.dirname(__file__) + "/..")  # noqa: E702
from _models import ensure_models  # noqa: E402
ensure_models("model.onnx")
import numpy as np

import fwdnxt
numfpga = 1
numclus = 2
sf = fwdnxt.FWDNXT() # Create FWDNXT API
snwresults = sf.Compile('224x224x3', 'model.onnx', 'fwdnxt.bin', numfpga, numclus) # Generate instructions
sf.Init('fwdnxt.bin', 'bitfile.bit') # Init the FPGA cards
output = np.ndarray(2*snwresults, dtype=np.float32) # Create a location for the output
# ... User's functions to get the input ...
input_img = np.random.rand(2, 3, 224, 224).astype(np.float32)
sf.Run(input_img, output) # Run 

print(f"2 clusters: output {output.shape}, {sf.GetInfo('hwtime'):.3f} ms modelled")

"""FWDNXT API: multiple FPGAs with different models (one card per FWDNXT object)."""
import sys; sys.path.insert(0, __import__("os").path.dirname(__file__) + "/..")  # noqa: E702
from _models import ensure_models  # noqa: E402
ensure_models("model1.onnx", "model2.onnx")
import numpy as np

import fwdnxt
numfpga = 1
numclus = 1
sf1 = fwdnxt.FWDNXT() # Create FWDNXT API
sf2 = fwdnxt.FWDNXT() # Create second FWDNXT API

snwresults1 = sf1.Compile('224x224x3', 'model1.onnx', 'fwdnxt1.bin', numfpga, numclus) # Generate instructions for model1
snwresults2 = sf2.Compile2('224x224x3', 'model2.onnx', 'fwdnxt2.bin', numfpga, numclus) # Generate instructions for model2

sf1.Init('fwdnxt1.bin', 'bitfile.bit') # Init the FPGA 1 with model 1
sf2.Init('fwdnxt2.bin', 'bitfile.bit') # Init the FPGA 2 with model 2

output1 = np.ndarray(snwresults1, dtype=np.float32) # Create a location for the output1
output2 = np.ndarray(snwresults2, dtype=np.float32) # Create a location for the output2

# ... User's functions to get the input ...
input_img1 = np.random.rand(1, 3, 224, 224).astype(np.float32)
input_img2 = np.random.rand(1, 3, 224, 224).astype(np.float32)
sf1.Run(input_img1, output1) # Run 
sf2.Run(input_img2, output2) 

print(f"model1 on one card: output {output1.shape}; model2 on another: output {output2.shape}")

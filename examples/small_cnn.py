"""The SDK's basic flow on the simulated DLA: Compile an ONNX model, Run an image, compare.

    python examples/small_cnn.py
"""
import numpy as np
import onnx

import microndla
import zoo

onnx.save(zoo.build("small_cnn", seed=0), "small_cnn.onnx")   # a model the project's model builder wrote

ie = microndla.MDLA()
names = ie.Compile("small_cnn.onnx")
x = np.random.rand(1, 3, 32, 32).astype(np.float32)
y = ie.Run(x)

print("outputs:", names, y.shape)
print("DLA (fixed point):  ", np.round(y[0], 3))
print("host float32 run:   ", np.round(ie.Run_th(x)[0], 3))
print(f"modelled time: {ie.GetInfo('hwcycles')} cycles = {ie.GetInfo('hwtime'):.4f} ms at {ie.GetInfo('freq')} MHz")
ie.Free()

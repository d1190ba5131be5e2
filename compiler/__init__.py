"""ONNX -> DLA compiler: front end (``frontend``), quantisation (``quantize``), tiling and code
generation (``codegen``), memory map (``memmap``) and the ``.bin`` container (``binfile``)."""

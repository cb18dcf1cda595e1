"""Everything in onnxkit that needs torch (the ``torch`` extra): ``export`` (a torch module to a verified ONNX
model, with ``export_inputs``), ``train`` (the training loop, with ``train_setup`` and ``train_batches``),
``zoo`` (small reference models) and ``demo`` (train, export and optimize, end to end).

onnxkit's core never imports this package; the ``export`` pass imports ``onnxkit.pytorch.export`` lazily. So
this module imports nothing: importing ``onnxkit.pytorch.export`` must not load the rest of the package."""

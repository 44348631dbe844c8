"""handprop: backpropagation by hand.

A multilayer perceptron learns handwritten digits; every layer's gradient comes from a
backward pass written out in ``handprop.functional`` (3Blue1Brown's backpropagation
lesson, as code), and PyTorch Lightning runs the training.

    functional  the math: activations and derivatives, costs and gradients, autograd.Functions
    nn          the manual Linear layer and the MLP
    module      the LightningModule (cost, metrics, optimiser)
    data        IDX files, the embedded MNIST sample, the LightningDataModule
    train       train(cfg) / evaluate(cfg), called by train.py / eval.py
"""

__version__ = "0.1.0"

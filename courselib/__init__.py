"""courselib: the tested library behind the *On-device Machine Learning* textbook.

One module per chapter topic:

- :mod:`courselib.data` -- data set loaders (digits offline; MNIST, Fashion-MNIST, CIFAR-10 with checksums)
- :mod:`courselib.training` -- seeded training and evaluation loops for torch models
- :mod:`courselib.memory` -- bytes per value, packed bits, model size on disk (chapter "Why on-device ML")
- :mod:`courselib.binary_codes`, :mod:`courselib.retrieval` -- binary codes and Hamming search
- :mod:`courselib.itq` -- Iterative Quantization and its baselines
- :mod:`courselib.binaryconnect` -- BinaryConnect layers and XNOR-popcount kernels
- :mod:`courselib.pruning` -- Optimal Brain Damage and filter pruning
- :mod:`courselib.distillation` -- knowledge distillation
- :mod:`courselib.quantization` -- uniform k-bit quantization, int8, the XNOR-Net scale
- :mod:`courselib.compare`, :mod:`courselib.challenge` -- the trade-off study and the compression challenge
- :mod:`courselib.grading` -- the nbgrader lab pipeline used by instructors (``courselib grade``), with
  :mod:`courselib.sandbox` (namespaces and limits around student kernels) and :mod:`courselib.cleanroom`
  (hidden tests re-run on plain data in a clean process)
- :mod:`courselib.quiz` -- the concept-check question bank and its autograder

Submodules are imported on demand, so ``import courselib`` stays fast.
"""

__version__ = "0.2.0"

"""courselib: the tested library behind the *On-device Machine Learning* textbook.

Two layers, one boundary.

**The book's appendix** -- content modules, flat, one per chapter topic, named like the chapter and
its lab (read them beside the book; the API reference renders their docstrings):

- :mod:`courselib.data` -- data set loaders (digits offline; MNIST, Fashion-MNIST, CIFAR-10 with checksums)
- :mod:`courselib.training` -- seeded training and evaluation loops for torch models
- :mod:`courselib.models` -- the small networks the chapters share (``MLP``, ``CourseCNN``)
- :mod:`courselib.measure` -- the cost model: parameters, MACs, bytes, latency (one name per quantity)
- :mod:`courselib.memory` -- bytes per value, packed bits, model size on disk (chapter "Why on-device ML")
- :mod:`courselib.binary_codes`, :mod:`courselib.retrieval` -- binary codes and Hamming search
- :mod:`courselib.itq` -- Iterative Quantization and its baselines
- :mod:`courselib.binaryconnect` -- BinaryConnect layers and XNOR-popcount kernels (the models and the
  training recipe; the binary layers in ``courselib._binaryconnect_layers``, the packed bits in
  ``courselib._binaryconnect_packed``)
- :mod:`courselib.pruning` -- Optimal Brain Damage and filter pruning (written in ``courselib._pruning_obd``,
  ``courselib._pruning_filters`` and ``courselib._pruning_sparse``, one per part of the two chapters)
- :mod:`courselib.distillation` -- knowledge distillation
- :mod:`courselib.quantization` -- uniform k-bit quantization, int8, the XNOR-Net scale
- :mod:`courselib.compare`, :mod:`courselib.challenge` -- the trade-off study and the compression challenge
- :mod:`courselib.utils`, :mod:`courselib.widgets` -- seeds, progress bars, timing; interactive explorers
- :mod:`courselib.labcheck` -- the labs' own check: which parts pass their visible tests, the file to hand in
- ``courselib._bits`` -- private: the bit-level kernels (popcount, XNOR), their NumPy fallbacks and the
  validator of packed codes
- ``courselib._validation`` -- private: the declarative checks of arguments the content modules share

A topic that outgrows a chapter-sized module is written in private modules (``courselib._pruning_obd`` ...)
and gathered in its public one, which is the only one to import from and the one the API reference shows.

**Instructor tooling** -- :mod:`courselib.grading`, a subpackage that no content module imports: the
nbgrader pipeline, the sandbox and clean room, class-scale grading, the leaderboard, the question bank,
mutation testing of the labs, and the one ``courselib`` command. Students never need it.

Submodules are imported on demand, so ``import courselib`` stays fast.
"""

__version__ = "0.2.0"

"""Segmentation methods: what each one adds to the shared stages (label rules, the random-walk pipeline).

- :mod:`~diffcut_engine.methods.diffcut`: DiffCut's label rule (concept assignment, PAMR, median filter), also
  used by the random-walk method;
- :mod:`~diffcut_engine.methods.rwncut`: ``method="rwncut"``, the random-walk NCut on transition matrices, with its
  options (:class:`~diffcut_engine.methods.rwncut_options.RWNCutOptions`, torch-free for the configuration).
"""

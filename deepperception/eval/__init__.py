"""KVG-Bench / FGVR evaluation.

Scoring lives in small pure modules (``parsing``, ``strict``, ``scoring``, ``bootstrap``,
``fgvr``), file I/O in ``io`` and the ``deepperception eval`` sub-app in ``cli``. Generation
(model inference) is a separate module and is not imported here, so scoring never pulls in
torch/transformers.
"""

"""SGQuant (Feng, Wang et al., ICTAI 2020): multi-granularity GNN quantization for memory.

* :mod:`.components` — which quantization point belongs to which layer and component (aggregation vs
  combination), and which points are node rows (bucketed by in-degree);
* :mod:`.config` — the bit configuration (per layer / component / degree bucket) and its text format;
* :mod:`.quantizer` — the asymmetric uniform fake quantizer with per-bucket bits and learned ranges;
* :mod:`.memory` — memory as SGQuant counts it (every stored tensor of inference, bits vs FP32);
* :mod:`.search` — ABS, the automatic bit selection (evaluations on validation, a ridge surrogate,
  the Pareto front of memory vs validation accuracy).

The passes are ``sgquant-annotate`` and ``sgquant-bits`` (``quantgraph/passes/sgquant_*.py``); the
policy is ``sgquant``.
"""

"""Import the built-in passes so they register themselves."""

from quantgraph.passes import (  # noqa: F401
    a2q_annotate,
    a2q_freeze_nns,
    a2q_train,
    annotate,
    calibrate,
    canonicalize,
    convert_qat,
    degree_buckets,
    degree_mask,
    dropout,
    fold_scales,
    insert_qdq,
    prepare_qat,
    quantize_bias,
    search_bits,
    sgquant_annotate,
    sgquant_bits,
    sgquant_budget,
    tag_roles,
    train_qat,
)

"""FlashInfer Trace attention ops (gqa_paged, gqa_ragged, mla_paged, mla_ragged, dsa_paged's sparse
attention) on attnbench's backends: their batch layout (layout.py), inputs (inputs.py), backends and
fp64 oracle (backends.py) and the table of what runs what (ops.py); `gdn` (Gated DeltaNet) decode,
prefill and mtp on the gdn variant's recurrent and chunked forms (gdn.py). `run --definition`
(run/trace_plan.py, run/trace_case.py) uses them; the definition files themselves are read by
core/fitrace.py."""

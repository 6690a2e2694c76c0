"""The variants: one file per family (exact, flash, positional, sparse, lsh, linear, vision, graph,
ring, mla, paged, gdn, dsa, moba, nsa), each listing its variants with all their backends; registry.py is the catalogue.

    base.py       Variant and Backend (frozen), Fn, Reason
    registry.py   the catalogue (FAMILIES), get/names/all_variants, decide (is this case runnable?)
    shared.py     math shared by families: masks, textbook softmax attention, FLOP/byte models, SDPA backends
    patterns.py   mask and layout builders (sliding window, Longformer, BigBird, strided)
    backends/     backend factories used by several families: flex, triton, peers, fault (tests only)
"""

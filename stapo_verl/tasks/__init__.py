"""Tasks and rewards: the graders (``reward``), the benchmarks' conversion to verl's data layout
(``data``), and the CPU presets' tasks (``multiplication``: the demo's, ``sums``: the comparison's).
"""

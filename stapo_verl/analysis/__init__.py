"""After training: ``stapo-verl eval`` (``eval``), ``stapo-verl report`` (``report``,
``grid_report``), their statistics (``stats``) and the silenced-token dumps (``dump``).
"""

"""segflow: the library behind the Snakemake rules, one module per pipeline stage.

Nothing here imports Snakemake; the rule scripts in ``workflow_scripts/`` are thin adapters that read
``snakemake.input/params/output`` and call into this package, so every stage can be unit tested on small arrays.
"""

__version__ = "0.1.0"

"""apcnn: multi-task CNN attribute prediction (Abdulnabi et al., IEEE TMM 2015).

Heavy modules (torch models, datasets) are imported lazily by the code that needs them; importing
``apcnn`` itself is cheap.
"""

__version__ = "0.1.0"

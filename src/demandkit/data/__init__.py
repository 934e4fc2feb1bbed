"""Built-in data sets: Nevo (2000) cereal and Berry, Levinsohn and Pakes (1995) automobiles.

The locations keep PyBLP's names so that ``pd.read_csv(data.NEVO_PRODUCTS_LOCATION)`` works as it
does there. The files are the public data of the papers, as distributed with PyBLP 1.3.0 (Nevo's
Matlab code; the replication files of Andrews, Gentzkow and Shapiro 2017 for the cars).
"""

from pathlib import Path

_HERE = Path(__file__).resolve().parent

NEVO_PRODUCTS_LOCATION: str = str(_HERE / "nevo_products.csv")
NEVO_AGENTS_LOCATION: str = str(_HERE / "nevo_agents.csv")
BLP_PRODUCTS_LOCATION: str = str(_HERE / "blp_products.csv")
BLP_AGENTS_LOCATION: str = str(_HERE / "blp_agents.csv")

__all__ = [
    "NEVO_PRODUCTS_LOCATION",
    "NEVO_AGENTS_LOCATION",
    "BLP_PRODUCTS_LOCATION",
    "BLP_AGENTS_LOCATION",
]

"""Built-in data sets: Nevo (2000) cereal, Berry, Levinsohn and Pakes (1995) automobiles and Petrin (2002)
minivans with micro moments.

The locations keep PyBLP's names so that ``pd.read_csv(data.NEVO_PRODUCTS_LOCATION)`` works as it
does there. The files are the public data of the papers, as distributed with PyBLP 1.3.0 (Nevo's
Matlab code; the replication files of Andrews, Gentzkow and Shapiro 2017 for the cars; for Petrin, the products
and instruments of his GAUSS code, 1,000 agents per market with truncated chi-squared nodes and demographics
resampled from his Consumer Expenditure Survey extract, the CEX statistics of the working paper's Table 6a in
``PETRIN_VALUES_LOCATION`` and their sample covariances from his code in ``PETRIN_COVARIANCES_LOCATION``).
"""

from pathlib import Path

_HERE = Path(__file__).resolve().parent

NEVO_PRODUCTS_LOCATION: str = str(_HERE / "nevo_products.csv")
NEVO_AGENTS_LOCATION: str = str(_HERE / "nevo_agents.csv")
BLP_PRODUCTS_LOCATION: str = str(_HERE / "blp_products.csv")
BLP_AGENTS_LOCATION: str = str(_HERE / "blp_agents.csv")
PETRIN_PRODUCTS_LOCATION: str = str(_HERE / "petrin_products.csv")
PETRIN_AGENTS_LOCATION: str = str(_HERE / "petrin_agents.csv")
PETRIN_VALUES_LOCATION: str = str(_HERE / "petrin_values.csv")
PETRIN_COVARIANCES_LOCATION: str = str(_HERE / "petrin_covariances.csv")

__all__ = [
    "NEVO_PRODUCTS_LOCATION",
    "NEVO_AGENTS_LOCATION",
    "BLP_PRODUCTS_LOCATION",
    "BLP_AGENTS_LOCATION",
    "PETRIN_PRODUCTS_LOCATION",
    "PETRIN_AGENTS_LOCATION",
    "PETRIN_VALUES_LOCATION",
    "PETRIN_COVARIANCES_LOCATION",
]

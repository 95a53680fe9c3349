"""Data shipped inside the package (see README.md in this folder for sources and licences)."""
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
SUNSPOTS_CSV = DATA_DIR / "sunspots.csv"

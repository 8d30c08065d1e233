"""Local `evaluate` module folder (the script is rrg_nlg.py); an __init__ so that wheels include it."""

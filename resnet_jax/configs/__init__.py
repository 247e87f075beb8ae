"""Configs shipped inside the package, so an installed wheel has a default job."""
import os

DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py')

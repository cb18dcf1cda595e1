"""The real-world corpus: fetch, own exports, calibration data and the ``--real`` sweep."""

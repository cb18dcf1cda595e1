"""``python -m onnxkit`` runs the CLI."""

from onnxkit.cli import main

main()

"""The Gradio UI. It calls the Tome service (tome.py) and nothing below it."""

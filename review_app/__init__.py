"""The Streamlit review app (built in a later issue)."""

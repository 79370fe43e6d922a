"""Transactions as text: the text formats and token counting."""

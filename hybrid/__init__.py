"""HRM as a latent reasoning controller on top of a frozen causal LLM.

The LLM stays frozen; an HRM reads its prompt states and conditions the LLM's last hidden
states before its own final norm and LM head. Imports `puzzle_hrm`, never copies it.
"""

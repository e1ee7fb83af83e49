"""The only code that touches verl's runtime: the actor worker hook (``worker``), the token mask
on verl's batches (``token_mask``), 20-Entropy's micro-batch plan (``micro_batches``) and the
Ray placement check (``cluster``). Installed by :mod:`stapo_verl.plugin`.
"""

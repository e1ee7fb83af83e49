"""Running verl on CPU: the ``cpu`` platform and the ``hf`` rollout backend (for the tiny preset).

Nothing is imported here: a process may enter through any of these modules (Ray imports
``hf_rollout`` to start a generation server), and each one imports verl first so that the plugin
(:mod:`stapo_verl.plugin`) registers the platform before verl's engine modules resolve it.
"""

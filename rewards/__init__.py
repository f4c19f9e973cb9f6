"""Built-in TDM-R1 rewards, imported as ``tdmr1_rewards`` and registered through the ``tdmr1.rewards``
entry points exactly like a third-party plugin (see ``docs/reward_plugins.md``)."""

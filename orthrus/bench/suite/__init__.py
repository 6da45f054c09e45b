"""A benchmark suite, from a YAML file to typed, validated specs and the cells they expand to.

One module per concern, imported directly (this package re-exports nothing, so importing one of
its modules never pulls in the others):

* ``spec``: the key names, the typed specs (``Suite``, ``ModelSpec``, ``EngineSpec``, ...) and ``Cell``;
* ``load``: safe YAML reading (duplicate keys refused);
* ``overrides``: ``--set``, ``--quick``, ``--device``, ``--engines`` applied to the raw mapping;
* ``checks``: value checks that turn a bad value into one sentence naming its key path;
* ``models`` / ``engines`` / ``prompt_sources``: the validators of those sections;
* ``validate``: ``validate_suite`` and ``load_suite``, which put it all together and expand the
  matrix once (``Suite.cells``).
"""

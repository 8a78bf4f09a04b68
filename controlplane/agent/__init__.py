"""The node agent (``aixds agent``): finds model servers and GPUs, publishes replica records,
loads/unloads models as asked. Imported only by the CLI and tests.

Folders by what they talk to: ``servers`` (model servers: adapters, scraping, speed,
discovery), ``gpus`` (GPU sources, fault latching), ``placement`` (the desired-models
executor). Here: ``publisher`` (probe and publish loops), ``lock`` (one agent per node),
``node`` (starts every task), ``config``, ``main`` (``aixds agent``), ``aio``.
"""

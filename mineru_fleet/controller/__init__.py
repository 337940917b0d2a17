"""The controller side: code that talks to hosts (through pyinfra) and to hubs and package indexes.

``facts``/``journal`` (pyinfra facts), ``gather`` (facts and journals for the CLI), ``factsdir`` (facts
folders on disk), ``modelstore`` (the model role's controller half), ``locks``/``wheelhouse`` (pinned
runtime locks and their wheels).
"""

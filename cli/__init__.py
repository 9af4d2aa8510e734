"""The application layer: the ``seisbind`` command line and the quickstart pipeline, on top of every library
package (``seisbind`` ground, ``model``, ``index``, ``service``); nothing imports it."""

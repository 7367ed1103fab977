"""The stage-two model: side network, fusion modules, and K of them stacked."""

"""umbra.node"""

"""umbra.chain.modules"""

"""umbra.contract"""

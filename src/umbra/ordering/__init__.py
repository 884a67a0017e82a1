"""umbra.ordering"""

"""restoration"""

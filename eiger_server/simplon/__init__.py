"""simplon"""

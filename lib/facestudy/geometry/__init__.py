"""facestudy.geometry"""

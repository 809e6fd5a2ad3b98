"""facestudy.losses"""

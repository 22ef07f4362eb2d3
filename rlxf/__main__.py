from rlxf.cli import entry_point

if __name__ == "__main__":
    raise SystemExit(entry_point())

#!/usr/bin/env python3
"""Independent verifier for lakeledger audit export packages (standard library only).

    verify_audit_package.py PACKAGE --key 'name+id+base64' [--key ...] [--trusted-checkpoint FILE]

The verifier lives in the Python client (clients/python/lakeledger/verify.py, also
`lakeledger.verify_audit` there); this runs it without installing anything, not even pyarrow.
"""

import importlib.util
import os
import sys

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python", "lakeledger", "verify.py")
_SPEC = importlib.util.spec_from_file_location("lakeledger_verify", _PATH)
_MODULE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_MODULE)

if __name__ == "__main__":
    sys.exit(_MODULE.main())

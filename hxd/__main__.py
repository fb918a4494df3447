import sys

from hxd.daemon import main

sys.exit(main())

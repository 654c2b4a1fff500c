"""`python -m data_prep.inspect FILE`: summarise an annotation file (data_prep/annotation_report).

The code lives in annotation_report so that no module of the project is named like the standard
library's `inspect`.
"""

import sys

from data_prep.annotation_report import main

if __name__ == "__main__":
  sys.exit(main())

"""What must outlive a connection or a process: in this process's memory by default, Redis when configured."""

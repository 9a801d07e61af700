module pyffi/examples/go

go 1.22

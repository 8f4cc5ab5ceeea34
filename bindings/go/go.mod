module github.com/dashattn/dashattn/bindings/go

go 1.19
